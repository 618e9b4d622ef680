
BlogitsJ(k	%¿dNE>ŒÐ—À2ðÙ¿±b{@bf”¿ã¯º@vrSÀ?„= 9:À