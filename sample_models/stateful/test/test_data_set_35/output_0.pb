
BlogitsJ(╚▄G└─й?S!h?╬░┐─NC╝╞e~┐tж└пыё@M5О?Ub-@