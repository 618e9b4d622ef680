
BlogitsJ(mAù@VM½ÀO[ÀU¿rçÀÌÓN?REœ¾D\nÀcüë¾.iä½