
BlogitsJ(YaÐ>ÜËÀúw¿d‹LÀ~ü¿ÐAÈ–û¿ÜSn¿ŒÿÛ?H¡Ø?