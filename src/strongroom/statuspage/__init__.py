"""A read-only status page for the operator: ``strongroom status-page --dir DIR``.

It asks the nodes with the operator's certificate (DIR/client.json's ``operator_cert``), reads what
lies in DIR (etcd members, certificates, the tail of each node's audit log), and shows it as one
HTML page (:mod:`.render`) and as JSON (``/status.json``). It holds and shows no key material and
no credential, and it can change nothing: it has no form and no other route.
"""
