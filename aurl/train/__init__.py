"""The three-stage training pipeline on Accelerate: `python -m aurl.train` / `accelerate launch -m aurl.train`.

Read it top-down: __main__ (the command) -> pipeline.run_pipeline (the stages in order, the Accelerator, the
stage-end evaluation) -> trainer.StageTrainer (one stage: setup, resume, train_step, after_step, finish) on
an engine.Engine (what DDP and DeepSpeed do differently). Beside them: validation, resume (may this stage go
on, from where, and on what split of the global batch), elastic (a resume on another number of processes),
checkpoint (the commit protocol), state (the state file and lock), schedule, preemption, tracking, plan
(--plan). Every path of the run folder comes from aurl.rundir.RunDir.
"""
