
BlogitsJ(fØý@4ÈÀÚÑ\ÀbC¿WïÀd½‘?ftW>ü<ÀQ¯”¿@m¥½