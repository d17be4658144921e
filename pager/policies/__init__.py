"""The pager's built-in replacement policies, one module each, and the interface they share.

`base.Policy` is what the pager drives; `pager.policy` picks a policy by name or loads a
plug-in class.
"""
