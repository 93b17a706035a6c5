"""The merge contract: what the optimizer proposes and the evaluators score, written once.

Both sides import it (the optimizer never imports evaluators/, nor evaluators/ the optimizer); it
imports only the standard library and pydantic, so neither side pulls torch or Optuna through it.
- methods.py: the merge methods and their facts (a mergekit-style registry of MethodInfo)
- granularity.py: how many weights each checkpoint gets (search.granularity)
- merge.py: MergeSpec, one merge as data, and BASE_WEIGHT
- evaluator.py: the Evaluator protocol, all the study runner asks of an evaluator"""
