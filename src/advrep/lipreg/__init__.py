"""lipreg: Finlay, Calder, Abbasi & Oberman, "Lipschitz regularized deep neural networks generalize and are
adversarially robust" (text copy ``shared/papers/001_92ec5d875816d6ad.txt``).

Detection (Sec. 7, Table 6, Figure 4) is in :mod:`advrep.lipreg.detection`; the evasive Carlini-Wagner attack in
:mod:`advrep.lipreg.evasive`.  Importing ``advrep.lipreg.evasive`` registers that attack as ``"evasive_cw"`` for
:func:`advrep.attacks.run_attack` (this package does not import it on its own).
"""
