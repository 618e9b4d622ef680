
BlogitsJ(í8•ÀY2˜>$?'ASj@öÀl…>®Š9À=GH¿þWÉ=`ŠG¿