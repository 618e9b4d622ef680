
BlogitsJ(V¼R¾DOŠ¿UÞŠÀƒNÀJÄÁ>Ê.M?—’£Àcª`>#.˜?Q÷@