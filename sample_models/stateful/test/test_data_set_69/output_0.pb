
BlogitsJ(¯÷5ÀôSi¾ta>{$ã@	{Æ¿€xÀÄÀ4ÀtM¿Èôh@'Wö¿