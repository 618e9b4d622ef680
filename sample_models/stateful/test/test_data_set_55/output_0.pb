
BlogitsJ(+‘’¿Lº³¿!öYÀ´IR?p:ð¾´ët?oÐÀNˆÔ¾m"ß=ŠÕA