
BlogitsJ(øÖšÀRS8? ™AwF©@G´Ý¿æt·¾¾ˆÀl&s¿Ëž>˜|Ç½