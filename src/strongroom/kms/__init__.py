"""The KMS-compatible HTTP API: an AWS KMS (JSON 1.1, SigV4) endpoint served from the cluster.

The gateway is a client of the cluster (it logs in as the KMS service user); keys live in the
cluster as non-extractable AES keys and every cryptographic operation runs there. See
``docs/kms.md``. Layout: :mod:`.server` (HTTP), :mod:`.gateway` (the request path and the
deletion sweep), :mod:`.ops` (one module per operation group), :mod:`.context` (what an operation
is given), :mod:`.authorization` (policies and grants), :mod:`.sigv4` (request signatures),
:mod:`.errors` (AWS error codes), :mod:`.validation` (AWS-style constraint messages),
:mod:`.arn`, :mod:`.ciphertext` (blob format), :mod:`.keyspecs`, :mod:`.model` (KMS metadata
over the cluster's records), :mod:`.backend` (the connections to the cluster), :mod:`.config`,
:mod:`.local` (the set-up of a gateway for a ``strongroom up`` directory).
"""
