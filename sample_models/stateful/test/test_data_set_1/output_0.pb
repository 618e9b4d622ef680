
BlogitsJ(:È¾mk…À‘©‹¿V$;ÀÍAÀôAgY¿&2„¿a”™?jº€?