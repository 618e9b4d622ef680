
BlogitsJ(ºW@OmÀnÓ“Àt¨d¿n(>â˜@=÷Ë¾@*×¬À$îm¾?g!À