"""Scoring: the suite's tasks read and checked, lm-eval's task dict, search/validation splits, prefix-shared scoring."""
