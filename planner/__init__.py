"""The planner: everything that happens before and beside a training job, as pure functions where possible.

How data flows (each stage names its module):

1. Index (`mixtera.planner.index`): `corpus_files` finds corpus files and reads their records,
   `properties` and `row_codegen` extract each record's metadata, `indexer` runs the per-file loop in
   worker processes (`parallel`), `writer` writes the Parquet tables and the manifest (`schema` reads them).
2. Mixture (`mixtera.planner.mixture`): `toml_reader` reads the TOML with line and column in errors,
   `spec` holds the dataclasses and their validation, `where` compiles each component's `where`
   expression once, `dynamic` the `[dynamic]` table (which feedback algorithm, when it refits).
3. Compile (`mixtera.planner.compile`): `selection` matches components against the index, `quotas` gives
   every step its exact integer quota per component, `packing` cuts the global stream into sequences and
   ranks, `plan_arrays` ties these together into a `CompiledPlan`, `writer` publishes the plan
   directory, `parallel` packs segments in worker processes (`--processes`), `pipeline` is the
   end-to-end `mixtera compile`, `elastic` re-partitions a plan for another world size.
4. Feedback (`mixtera.planner.feedback`): `orchestrate` is `mixtera feedback` (lock, pending decisions,
   follow), `algorithms` the table of feedback algorithms, `ado` and `ado_fit` ADO and its scaling-law
   fit, `loss_proportional` the simple alternative, `rewrite` decides one refit and publishes the version.
5. Report (`mixtera.planner.report`): what `mixtera inspect PLAN` shows, from one open of the plan.

The on-disk formats these stages write live in `mixtera.runtime.format`, the one home of every encoder
and reader, because the runtime must read them without importing the planner.
"""
