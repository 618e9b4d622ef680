
BlogitsJ(EÁ¿Cû%Àîú¦?´ÏR¿kuÀ~±°@WG¿Ì—oÀp	Â?GP@