"""Studies: many pretraining runs + readouts on a fixed dataset and budget, aggregated over seeds into tables,
figures and tested claims. `poodle.study.synthdrive` runs the paper's Table 4/5 variants at CPU scale."""
