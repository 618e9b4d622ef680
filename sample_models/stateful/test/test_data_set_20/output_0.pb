
BlogitsJ(À­iÀ«AXQ…Àh {½«Ò6@ìSˆÀ¼Ð9Ài³>vµë?geg?