"""Throughput, efficiency and memory of the sampling and training hot loops (issue 7).

What is measured, for one model size and configuration:

- sampling (``sampling``): :func:`~editspecialists.diffusion.sampler.sample_edits` in denoising
  steps × edits per second, against a naive sampler written the way the research code did it
  (``naive_sampler``), and against the raw UNet forward at the same batch shape (4 branches ×
  nb_gen × batch, 12 channels; ``raw_calls``);
- training (``training``): the trainer's micro-step (``micro_step``) in trained transitions per
  second, against the raw UNet forward+backward and the reference forward at its shapes;
- feedback (``feedback``): edits scored per second by each feedback model;
- memory (``measuring``): peak CUDA memory allocated per phase on GPU, the process's peak RSS on CPU.

Efficiency = pure model time / measured time. Every timing is a median over repeats after
warm-up. The timings a ratio compares are taken in rounds (each function once per round, in
turn) and a ratio is the median of its per-round ratios, so load that drifts on a shared machine
slows both sides alike. On CUDA the device is synchronised around each timed call only.

The model sizes are in ``sizes``, a run's settings in ``settings``, its loaded models in
``models``; ``report`` runs every measurement and formats the report.
"""
