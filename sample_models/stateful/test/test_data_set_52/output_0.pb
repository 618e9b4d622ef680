
BlogitsJ(«ATOÃÀC®dÀZz¿ sý¿ÞëÉ>¬°ð?ÀŠÀ¡°¿¯¿