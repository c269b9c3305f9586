"""Functional ops, one folder per op: ``naive.py`` (the reference) beside the fast forms.

Layout is ``[B, T, H, D]``; a public op returns ``(o, final_state)``.
"""
