"""Explanations of a served model's predictions (``:explain``), built on the ``shap`` library.

- :mod:`settings`: the package's ``explainer:`` section as the explainers read it;
- :mod:`background`: the background sample (a .csv, .parquet or .npy file, or ``examples.yaml``);
- :mod:`algorithms`: shap's tree, linear, kernel and permutation explainers, attributions normalised;
- :mod:`answer`: the JSON answer (and KServe V1's ``explanations``);
- :mod:`builtin`: the explainer the server uses for a runtime model that has no explain() of its own.

Nothing here imports shap (or pandas) until an explanation is asked for, so serving never pays for it.
"""
