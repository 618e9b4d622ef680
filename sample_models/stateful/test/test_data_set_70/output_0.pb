
BlogitsJ(ßrM¿yÊ¿X_àÀº‘^ÀÜA:A]¿ã>4¿z¹û¿T¿ajŠ?