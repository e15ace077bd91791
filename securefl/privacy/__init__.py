"""Differential privacy: accountants (and, to come, budgets, the ledger and the audit)."""
