"""The KMS-compatible HTTP API: an AWS KMS (JSON 1.1, SigV4) endpoint served from the cluster.

The gateway is a client of the cluster (it logs in as the KMS service user); keys live in the
cluster as non-extractable AES keys and every cryptographic operation runs there. See
``docs/kms.md``. Layout: :mod:`.server` (HTTP), :mod:`.sigv4` (request signatures),
:mod:`.errors` (AWS error codes), :mod:`.validation` (AWS-style constraint messages),
:mod:`.arn`, :mod:`.ciphertext` (blob format), :mod:`.keyspecs`, :mod:`.model` (KMS metadata
over the cluster's records), :mod:`.backend` (everything that talks to the cluster),
:mod:`.ops` (one module per operation group), :mod:`.config`, :mod:`.local` (a gateway for a
``strongroom up`` directory).
"""
