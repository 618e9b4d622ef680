
BlogitsJ(V ?F37¿eÿÀ‹@ÀAHAˆ{*ÀÀ³W@n¤rÀ‡3¿„eÀ