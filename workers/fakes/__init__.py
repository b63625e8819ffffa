"""Faithful fakes of the external HTTP APIs (Argo CD, Azure DevOps, GitHub), served over real sockets.

Shared by the tests and `gitops-bridge demo`. Each fake reproduces the quirks documented in the reference notes,
because a fake kinder than the real service hides bugs.
"""
