"""The aggregated API group ``subresources.vmsandbox.io/v1alpha1``, served by the operator.

The API server authenticates the user, authorizes ``vmsandboxes/<subresource>`` with its RBAC and
proxies here with the user in requestheader headers (:mod:`.trust` decides whom to believe);
:mod:`.server` finds the sandbox's node agent and relays the request there with the operator's
own credentials (:mod:`.proxy`).
"""
