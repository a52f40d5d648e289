"""Slide quality control before analysis (HistoQC's checks, inside dlcore's engine).

- :mod:`dlcore.qc.classes`: the QC mask's classes and the pass / warn / fail rules;
- :mod:`dlcore.qc.artefacts`: pen ink, folds, pale tissue, bubbles and coverslip edges on a
  low-resolution thumbnail;
- :mod:`dlcore.qc.focus`: the per-block focus measure at the working resolution;
- :mod:`dlcore.qc.run`: one slide's QC (:func:`~dlcore.qc.run.run_qc`);
- :mod:`dlcore.qc.outputs`: the QC files (mask, overview, JSON) and the batch QC table.

``docs/QC.md`` documents each method and threshold.
"""
