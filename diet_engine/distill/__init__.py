"""One DIET stage (paper §4, Alg. 1-2): boundary initialisation, memory fusion, influence, addressing, bi-level optimisation."""
