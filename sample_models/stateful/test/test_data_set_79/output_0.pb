
BlogitsJ(BÙÀÁ1Ú¿]@4zAŸŒÀH×KÀ=KŽÀ3c	¿´ÞX?¥Xj?