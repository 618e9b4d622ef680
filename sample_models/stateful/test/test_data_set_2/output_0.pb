
BlogitsJ(•¿√F¿÷h}¿’Kê¿+|“?õ~Z@IÉ¿Ráí? ZN@l8ô@