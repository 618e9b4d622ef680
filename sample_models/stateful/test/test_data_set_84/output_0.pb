
BlogitsJ(‰Ha¿Î¨‡@°<Äø<sﬁ?¨å?Âzì¿Çâ<¿˛Z?R§L?a¶E?