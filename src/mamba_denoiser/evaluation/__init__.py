"""Does denoising help? The library half of ``evaluate.py``.

Modules (import from them directly; each docstring documents its public API):

- ``baselines``: classical denoisers of one series (EMA, Kalman local level / AR(1) /
  integrated AR(1) plus noise, Savitzky-Golay, Hodrick-Prescott), fitted on train rows
  only, causal and two-sided; ``apply_baselines`` runs them over a (T, F) panel.
- ``metrics``: MSE, SNR gain (dB), lag, IC / rank IC, R^2, hit rate, Sharpe and the
  Hull Tactical competition's volatility-adjusted Sharpe.
- ``downstream``: purged walk-forward forecasts of the raw target (ridge and gradient
  boosting), past-only position sizing, and their out-of-sample metrics.
- ``leakage``: checks that raise ``LeakageError`` (future perturbation, look-ahead
  statistic, targets among features).
"""
