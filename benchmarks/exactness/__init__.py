"""Exactness benchmark: does ambient diffusion learn the *clean* distribution from noisy data?

The data is a mixture of Gaussians in R^d, where the clean law and E[x0 | x_sigma] are known in closed
form. Four variants share one small network (an MLP behind EDM preconditioning), one budget (steps,
batch, learning rate) and one sampler; only the loss and where sampling stops differ:

- oracle:      trained on the clean data (ambient_loss with sigma_n = 0), sampled to sigma = 0;
- naive:       trained on the noisy data as if it were clean, sampled to sigma = 0;
- early_stop:  ambient_loss on the noisy data, sampled down to sigma_n and finished with one Tweedie step;
- consistency: ambient_loss + lambda * consistency_loss on the noisy data, sampled to sigma = 0;
- em_reference: no network: a K-component full-covariance Gaussian mixture fitted to the noisy data by
  EM with every covariance constrained to >= sigma_n^2 I, then sigma_n^2 I subtracted from each
  covariance. It knows the family of the truth, so it shows how much of the gap to the oracle is
  missing information (the noise) and how much is the method.

``--settings-rows`` adds consistency rows with named ConsistencySettings (the shipped defaults, the
benchmark recipe, one-knob moves); every trained row records the CPU seconds per training step and a
held-out validation ambient loss (levels above sigma_n), the only quality signal a user has.

Every field of ``config.Config`` is an option of the command line (``cli`` generates the parser from the
dataclass), with the benchmark as published as its default; the levers are --steps, --hidden, --depth,
--noise-freqs, --noise-embedding, --weight-ramp (consistency-weight curriculum), --level-weight-power
(per-level ambient weighting) and --below-anchor (consistency anchors below sigma_n); results in
docs/benchmarks.md, "Levers at sigma_n = 0.2".

Metrics: the sliced Wasserstein-2 distance of generated samples to fresh clean samples (next to the
clean-vs-clean floor), and the denoiser's mean squared error against the analytic posterior mean at
noise levels below and above sigma_n. Every loss and sampler comes from ``ambient.core``.

Modules: ``config`` (every default), ``model`` (the MLP), ``data`` (the mixture and its samples),
``train`` (training steps and step-cost timing), ``reference`` (the EM reference), ``metrics``,
``run`` (rows and the whole benchmark), ``report`` (table and JSON), ``plots``, ``cli``.

    python -m benchmarks.exactness --dim 2 --components 8 --sigma-n 0.2 0.5 1.0 --json out.json --plot out.png
"""
