
BlogitsJ(o9À™X‘?@q¾€U‘<3zµ¾`ÀeÒŒÀ¶¯Aa\Õ?_°I?