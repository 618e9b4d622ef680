
BlogitsJ(Lü@bŞÓÀ
îZÀGÀªôÀÏé?.VI>#!mÀcr¼¾}R"¿