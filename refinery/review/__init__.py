"""Review stage: the proposal state machine, decisions, audit log and outbox.

Owns proposal status changes made by people, the audit_log and outbox tables, and prompt
registry writes caused by approvals. May not draft or re-draft proposals (that is propose/).
"""
