
BlogitsJ(îK`Àhk¤?#›ÄÀy—JÀy^ü@ŒÚ8¿yëLÀ1+T?¶G¨?âL@