"""How keys and signatures are written down: strict DER (OIDs, OCTET STRINGs), the named curves, and
the PKCS#11 attribute forms of public keys (RSA, EC, Edwards), both ways.

Pure encoding below everything that describes keys — the mechanisms on the node, the KMS gateway,
the CLI: no key is used here, only read or written. All cryptography is pyca/cryptography's.
"""
