
BlogitsJ(8▀░╬уV^©ЪH·?Ш=Л©*╙╬9g╖©iA═ёwюGфL?■Tую