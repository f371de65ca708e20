// Java 17 JCE against Strongroom through the JDK's own SunPKCS11 provider (no Strongroom code).
//
//   java StrongroomJce CONFIG PIN WRONG_PIN [TOKEN_AES_LABEL]
//   java StrongroomJce CONFIG -                 (nobody logs in: what a public session does)
//
// CONFIG is a SunPKCS11 configuration naming the Strongroom PKCS#11 module; PIN is user:password;
// WRONG_PIN must be refused; TOKEN_AES_LABEL names a token AES key of that user that the key store
// must list and that must encrypt.
// Prints one line per check, "OK <name> [detail]" or "FAIL <name>: <exception>" (or "SKIP <name>: why"),
// and "DATA <name> <base64>" lines for the test's cross-check with pyca/cryptography. Exit status: the
// number of failures (0 when every check passed).

import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.security.Key;
import java.security.KeyFactory;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.Provider;
import java.security.PublicKey;
import java.security.SecureRandom;
import java.security.Security;
import java.security.Signature;
import java.security.interfaces.ECPublicKey;
import java.security.interfaces.RSAPublicKey;
import java.security.spec.ECGenParameterSpec;
import java.security.spec.MGF1ParameterSpec;
import java.security.spec.PSSParameterSpec;
import java.security.spec.RSAKeyGenParameterSpec;
import java.security.spec.X509EncodedKeySpec;
import java.util.Arrays;
import java.util.Base64;
import java.util.Collections;
import java.util.List;
import javax.crypto.AEADBadTagException;
import javax.crypto.Cipher;
import javax.crypto.KeyAgreement;
import javax.crypto.KeyGenerator;
import javax.crypto.Mac;
import javax.crypto.SecretKey;
import javax.crypto.spec.GCMParameterSpec;
import javax.crypto.spec.IvParameterSpec;
import javax.crypto.spec.SecretKeySpec;

public final class StrongroomJce {

    interface Check {
        String run() throws Exception;
    }

    private static int failures = 0;
    private static final SecureRandom RANDOM = new SecureRandom();
    private static final Base64.Encoder B64 = Base64.getEncoder();

    private static void check(String name, Check body) {
        try {
            String detail = body.run();
            System.out.println("OK " + name + (detail == null || detail.isEmpty() ? "" : " " + detail));
        } catch (Skip skip) {
            System.out.println("SKIP " + name + ": " + skip.getMessage());
        } catch (Throwable t) {
            failures++;
            System.out.println("FAIL " + name + ": " + t);
            t.printStackTrace(System.err);
        }
        System.out.flush();
    }

    static final class Skip extends Exception {
        private static final long serialVersionUID = 1L;

        Skip(String why) {
            super(why);
        }
    }

    private static void require(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    private static void data(String name, byte[] value) {
        System.out.println("DATA " + name + " " + B64.encodeToString(value));
    }

    private static byte[] random(int n) {
        byte[] b = new byte[n];
        RANDOM.nextBytes(b);
        return b;
    }

    // --- state shared between checks ------------------------------------------------------------------

    private static Provider provider;
    private static KeyStore keyStore;
    private static KeyPair rsa;
    private static KeyPair ec;
    private static SecretKey aes;

    public static void main(String[] args) throws Exception {
        if (args.length == 2 && args[1].equals("-")) {
            publicSession(args[0]);
            return;
        }
        if (args.length < 3) {
            System.err.println("usage: StrongroomJce CONFIG PIN WRONG_PIN [TOKEN_AES_LABEL] | CONFIG -");
            System.exit(100);
        }
        final String configPath = args[0];
        final char[] pin = args[1].toCharArray();
        final char[] wrongPin = args[2].toCharArray();
        final String tokenAesLabel = args.length > 3 ? args[3] : null;
        final byte[] message = ("Strongroom through SunPKCS11 " + System.nanoTime()).getBytes(StandardCharsets.UTF_8);
        data("message", message);

        check("provider", () -> {
            Provider base = Security.getProvider("SunPKCS11");
            require(base != null, "the JDK has no SunPKCS11 provider");
            provider = base.configure(configPath);
            require(provider.isConfigured(), "provider not configured");
            Security.addProvider(provider);
            return provider.getName();
        });
        if (provider == null) {
            System.exit(Math.max(failures, 1));
        }

        check("keystore-wrong-pin", () -> {
            KeyStore refused = KeyStore.getInstance("PKCS11", provider);
            try {
                refused.load(null, wrongPin);
            } catch (java.io.IOException expected) {
                // IOException <- UnrecoverableKeyException <- FailedLoginException <- PKCS11Exception
                StringBuilder chain = new StringBuilder();
                boolean failedLogin = false;
                for (Throwable t = expected; t != null; t = t.getCause()) {
                    failedLogin |= t instanceof javax.security.auth.login.FailedLoginException;
                    chain.append(" <- ").append(t);
                }
                require(failedLogin, "refused without a FailedLoginException:" + chain);
                require(chain.indexOf("CKR_PIN_INCORRECT") >= 0, "not CKR_PIN_INCORRECT:" + chain);
                return "CKR_PIN_INCORRECT";
            }
            throw new AssertionError("the key store opened with a wrong PIN");
        });

        check("keystore-login", () -> {
            keyStore = KeyStore.getInstance("PKCS11", provider);
            keyStore.load(null, pin);
            return "size=" + keyStore.size();
        });

        check("keystore-aliases", () -> {
            List<String> aliases = Collections.list(keyStore.aliases());
            Collections.sort(aliases);
            if (tokenAesLabel != null) {
                require(aliases.contains(tokenAesLabel), "token key " + tokenAesLabel + " not in " + aliases);
                require(keyStore.isKeyEntry(tokenAesLabel), tokenAesLabel + " is not a key entry");
            }
            return String.join(",", aliases);
        });

        if (tokenAesLabel != null) {
            check("token-aes-gcm", () -> {
                Key key = keyStore.getKey(tokenAesLabel, null);
                require(key instanceof SecretKey, "token key is " + key);
                require("AES".equals(key.getAlgorithm()), "algorithm " + key.getAlgorithm());
                byte[] plain = random(100);
                Cipher enc = Cipher.getInstance("AES/GCM/NoPadding", provider);
                enc.init(Cipher.ENCRYPT_MODE, key, new GCMParameterSpec(128, random(12)));
                byte[] sealed = enc.doFinal(plain);
                Cipher dec = Cipher.getInstance("AES/GCM/NoPadding", provider);
                dec.init(Cipher.DECRYPT_MODE, key, enc.getParameters().getParameterSpec(GCMParameterSpec.class));
                require(Arrays.equals(dec.doFinal(sealed), plain), "round trip differs");
                return "";
            });
        }

        check("keygen-rsa-2048", () -> {
            KeyPairGenerator kpg = KeyPairGenerator.getInstance("RSA", provider);
            kpg.initialize(new RSAKeyGenParameterSpec(2048, RSAKeyGenParameterSpec.F4));
            rsa = kpg.generateKeyPair();
            RSAPublicKey pub = (RSAPublicKey) rsa.getPublic();
            require(pub.getModulus().bitLength() == 2048, "modulus bits " + pub.getModulus().bitLength());
            require(pub.getPublicExponent().equals(BigInteger.valueOf(65537)), "exponent " + pub.getPublicExponent());
            require(rsa.getPrivate().getEncoded() == null, "the private key left the HSM in clear");
            return rsa.getPrivate().getClass().getSimpleName();
        });

        check("keygen-ec-p256", () -> {
            KeyPairGenerator kpg = KeyPairGenerator.getInstance("EC", provider);
            kpg.initialize(new ECGenParameterSpec("secp256r1"));
            ec = kpg.generateKeyPair();
            ECPublicKey pub = (ECPublicKey) ec.getPublic();
            require(pub.getParams().getCurve().getField().getFieldSize() == 256, "field size");
            require(ec.getPrivate().getEncoded() == null, "the private key left the HSM in clear");
            return "";
        });

        check("keygen-aes-256", () -> {
            KeyGenerator kg = KeyGenerator.getInstance("AES", provider);
            kg.init(256);
            aes = kg.generateKey();
            require("AES".equals(aes.getAlgorithm()), "algorithm " + aes.getAlgorithm());
            require(aes.getEncoded() == null, "the secret key left the HSM in clear");
            return "";
        });

        check("sign-SHA256withRSA", () -> {
            byte[] sig = signVerify("SHA256withRSA", null, rsa, message);
            data("rsa-public", rsa.getPublic().getEncoded());
            data("rsa-signature", sig);
            return "len=" + sig.length;
        });

        check("sign-SHA256withECDSA", () -> {
            byte[] sig = signVerify("SHA256withECDSA", null, ec, message);
            data("ec-public", ec.getPublic().getEncoded());
            data("ec-signature", sig);
            return "len=" + sig.length;
        });

        check("sign-RSASSA-PSS", () -> {
            String algorithm = null;
            for (String name : new String[] {"RSASSA-PSS", "SHA256withRSASSA-PSS"}) {
                if (provider.getService("Signature", name) != null) {
                    algorithm = name;
                    break;
                }
            }
            if (algorithm == null) {
                throw new Skip("the provider offers no RSASSA-PSS signature with this module");
            }
            PSSParameterSpec spec = new PSSParameterSpec("SHA-256", "MGF1", MGF1ParameterSpec.SHA256, 32, 1);
            byte[] sig = signVerify(algorithm, spec, rsa, message);
            data("pss-signature", sig);
            return algorithm + " len=" + sig.length;
        });

        check("aes-gcm", () -> {
            byte[] aad = "header".getBytes(StandardCharsets.UTF_8);
            StringBuilder sizes = new StringBuilder();
            for (int size : new int[] {0, 1, 16, 1000}) {
                byte[] plain = random(size);
                // The provider chooses the IV (encrypt mode without parameters).
                Cipher enc = Cipher.getInstance("AES/GCM/NoPadding", provider);
                enc.init(Cipher.ENCRYPT_MODE, aes);
                enc.updateAAD(aad);
                byte[] sealed = enc.doFinal(plain);
                require(sealed.length == size + 16, "sealed length " + sealed.length);
                GCMParameterSpec params = enc.getParameters().getParameterSpec(GCMParameterSpec.class);
                require(params.getTLen() == 128, "tag bits " + params.getTLen());

                Cipher dec = Cipher.getInstance("AES/GCM/NoPadding", provider);
                dec.init(Cipher.DECRYPT_MODE, aes, params);
                dec.updateAAD(aad);
                require(Arrays.equals(dec.doFinal(sealed), plain), "round trip differs at size " + size);

                // A flipped bit must fail authentication.
                byte[] tampered = sealed.clone();
                tampered[tampered.length - 1] ^= 1;
                Cipher bad = Cipher.getInstance("AES/GCM/NoPadding", provider);
                bad.init(Cipher.DECRYPT_MODE, aes, params);
                bad.updateAAD(aad);
                try {
                    bad.doFinal(tampered);
                    throw new AssertionError("a tampered ciphertext decrypted at size " + size);
                } catch (AEADBadTagException expected) {
                    // good
                }
                sizes.append(size).append(' ');
            }
            // An explicit 12-byte IV and a 96-bit tag, with update() calls. (The provider buffers
            // update() input and encrypts single-part at doFinal(); update() then doFinal() *with input*
            // loses that last input in JDK 17's P11AEADCipher whatever the module (its offset check), so
            // the input goes through update() and doFinal() gets none.)
            byte[] iv = random(12);
            byte[] plain = random(333);
            Cipher enc = Cipher.getInstance("AES/GCM/NoPadding", provider);
            enc.init(Cipher.ENCRYPT_MODE, aes, new GCMParameterSpec(96, iv));
            byte[] sealed = concat(concat(enc.update(plain, 0, 100), enc.update(plain, 100, plain.length - 100)),
                    enc.doFinal());
            require(sealed.length == plain.length + 12, "sealed length " + sealed.length);
            Cipher dec = Cipher.getInstance("AES/GCM/NoPadding", provider);
            dec.init(Cipher.DECRYPT_MODE, aes, new GCMParameterSpec(96, iv));
            require(Arrays.equals(dec.doFinal(sealed), plain), "round trip differs (explicit IV)");
            return "sizes " + sizes.toString().trim();
        });

        check("aes-cbc-pkcs5", () -> {
            StringBuilder sizes = new StringBuilder();
            for (int size : new int[] {0, 15, 16, 17, 1000}) {
                byte[] plain = random(size);
                byte[] iv = random(16);
                Cipher enc = Cipher.getInstance("AES/CBC/PKCS5Padding", provider);
                enc.init(Cipher.ENCRYPT_MODE, aes, new IvParameterSpec(iv));
                byte[] sealed = enc.doFinal(plain);
                require(sealed.length == (size / 16 + 1) * 16, "padded length " + sealed.length + " for " + size);
                Cipher dec = Cipher.getInstance("AES/CBC/PKCS5Padding", provider);
                dec.init(Cipher.DECRYPT_MODE, aes, new IvParameterSpec(iv));
                require(Arrays.equals(dec.doFinal(sealed), plain), "round trip differs at size " + size);
                sizes.append(size).append(' ');
            }
            // Multi-part: update() in odd pieces, then doFinal().
            byte[] iv = random(16);
            byte[] plain = random(777);
            Cipher enc = Cipher.getInstance("AES/CBC/PKCS5Padding", provider);
            enc.init(Cipher.ENCRYPT_MODE, aes, new IvParameterSpec(iv));
            byte[] sealed = concat(concat(enc.update(plain, 0, 5), enc.update(plain, 5, 300)),
                    enc.doFinal(plain, 305, plain.length - 305));
            Cipher dec = Cipher.getInstance("AES/CBC/PKCS5Padding", provider);
            dec.init(Cipher.DECRYPT_MODE, aes, new IvParameterSpec(iv));
            byte[] opened = concat(dec.update(sealed, 0, 40), dec.doFinal(sealed, 40, sealed.length - 40));
            require(Arrays.equals(opened, plain), "multi-part round trip differs");
            return "sizes " + sizes.toString().trim() + " multipart";
        });

        check("ecdh", () -> {
            // SunPKCS11's key agreement derives a generic secret with a template of its class and key type only
            // (no CKA_VALUE_LEN) and reads its CKA_VALUE: the shared secret, equal to the software one. The
            // configuration's attribute lines give the EC key CKA_DERIVE and the secret CKA_SENSITIVE=false,
            // CKA_EXTRACTABLE=true (PKCS#11's defaults refuse both, here as with SoftHSMv2).
            KeyPairGenerator soft = KeyPairGenerator.getInstance("EC", "SunEC");
            soft.initialize(new ECGenParameterSpec("secp256r1"));
            KeyPair peer = soft.generateKeyPair();
            KeyAgreement agreement = KeyAgreement.getInstance("ECDH", provider);
            agreement.init(ec.getPrivate());
            agreement.doPhase(peer.getPublic(), true);
            byte[] secret = agreement.generateSecret();
            KeyAgreement outside = KeyAgreement.getInstance("ECDH", "SunEC");
            outside.init(peer.getPrivate());
            outside.doPhase(ec.getPublic(), true);
            require(Arrays.equals(secret, outside.generateSecret()), "the shared secrets differ");
            // ... and as a key object (generateSecret("TlsPremasterSecret"), the one algorithm JDK 17's
            // SunPKCS11 derives into an object) whose CKA_VALUE the provider reads back: the same secret.
            agreement.init(ec.getPrivate());
            agreement.doPhase(peer.getPublic(), true);
            SecretKey derived = agreement.generateSecret("TlsPremasterSecret");
            require(Arrays.equals(derived.getEncoded(), secret), "the derived key object holds another secret");
            return "len=" + secret.length;
        });

        check("hmac-imported", () -> {
            // A key the application has in clear: SunPKCS11 imports it (C_CreateObject of a secret key).
            SecretKeySpec key = new SecretKeySpec(random(32), "HmacSHA256");
            Mac mac = Mac.getInstance("HmacSHA256", provider);
            mac.init(key);
            byte[] tag = mac.doFinal(message);
            Mac soft = Mac.getInstance("HmacSHA256", "SunJCE");
            soft.init(key);
            require(Arrays.equals(tag, soft.doFinal(message)), "HMAC differs from SunJCE's");
            return "";
        });

        check("aes-imported", () -> {
            SecretKeySpec key = new SecretKeySpec(random(16), "AES");
            byte[] iv = random(16);
            Cipher enc = Cipher.getInstance("AES/CBC/PKCS5Padding", provider);
            enc.init(Cipher.ENCRYPT_MODE, key, new IvParameterSpec(iv));
            Cipher soft = Cipher.getInstance("AES/CBC/PKCS5Padding", "SunJCE");
            soft.init(Cipher.ENCRYPT_MODE, key, new IvParameterSpec(iv));
            require(Arrays.equals(enc.doFinal(message), soft.doFinal(message)), "AES-CBC differs from SunJCE's");
            return "";
        });

        check("logout", () -> {
            // Logging out through the provider's login API: the keystore then needs the PIN again.
            if (provider instanceof java.security.AuthProvider) {
                ((java.security.AuthProvider) provider).logout();
            }
            return "";
        });

        System.out.println("END failures=" + failures);
        System.exit(failures);
    }

    /** Nobody logs in (PKCS#11 §6.7): the provider verifies with a public key it imports as a public session
     *  object, encrypts with a public RSA key, digests and draws random bytes. */
    private static void publicSession(String configPath) throws Exception {
        byte[] message = "verified by a session that is not logged in".getBytes(StandardCharsets.UTF_8);
        check("provider", () -> {
            provider = Security.getProvider("SunPKCS11").configure(configPath);
            Security.addProvider(provider);
            return provider.getName();
        });
        check("public-verify", () -> {
            KeyPairGenerator soft = KeyPairGenerator.getInstance("EC", "SunEC");
            soft.initialize(new ECGenParameterSpec("secp256r1"));
            KeyPair pair = soft.generateKeyPair();
            Signature signer = Signature.getInstance("SHA256withECDSA", "SunEC");
            signer.initSign(pair.getPrivate());
            signer.update(message);
            byte[] sig = signer.sign();
            Signature verifier = Signature.getInstance("SHA256withECDSA", provider);
            verifier.initVerify(pair.getPublic());
            verifier.update(message);
            require(verifier.verify(sig), "the provider rejects a good signature");
            verifier.initVerify(pair.getPublic());
            verifier.update(concat(message, new byte[] {1}));
            require(!verifier.verify(sig), "the provider accepts a signature of other data");
            return "";
        });
        check("public-encrypt", () -> {
            KeyPairGenerator soft = KeyPairGenerator.getInstance("RSA", "SunRsaSign");
            soft.initialize(2048);
            KeyPair pair = soft.generateKeyPair();
            Cipher enc = Cipher.getInstance("RSA/ECB/PKCS1Padding", provider);
            enc.init(Cipher.ENCRYPT_MODE, pair.getPublic());
            byte[] sealed = enc.doFinal(message);
            Cipher dec = Cipher.getInstance("RSA/ECB/PKCS1Padding", "SunJCE");
            dec.init(Cipher.DECRYPT_MODE, pair.getPrivate());
            require(Arrays.equals(dec.doFinal(sealed), message), "the software key does not open it");
            return "";
        });
        check("public-digest", () -> {
            byte[] digest = java.security.MessageDigest.getInstance("SHA-256", provider).digest(message);
            require(Arrays.equals(digest, java.security.MessageDigest.getInstance("SHA-256", "SUN").digest(message)),
                    "the digest differs");
            return "";
        });
        check("public-random", () -> {
            SecureRandom random = SecureRandom.getInstance("PKCS11", provider);
            byte[] bytes = new byte[32];
            random.nextBytes(bytes);
            return "";
        });
        System.out.println("END failures=" + failures);
        System.exit(failures);
    }

    /** Sign through the provider, verify through the provider and through the JDK's software provider. */
    private static byte[] signVerify(String algorithm, PSSParameterSpec spec, KeyPair pair, byte[] message)
            throws Exception {
        Signature signer = Signature.getInstance(algorithm, provider);
        if (spec != null) {
            signer.setParameter(spec);
        }
        signer.initSign(pair.getPrivate());
        signer.update(message, 0, 7);  // multi-part, as applications do
        signer.update(message, 7, message.length - 7);
        byte[] sig = signer.sign();

        Signature verifier = Signature.getInstance(algorithm, provider);
        if (spec != null) {
            verifier.setParameter(spec);
        }
        verifier.initVerify(pair.getPublic());
        verifier.update(message);
        require(verifier.verify(sig), algorithm + ": the provider rejects its own signature");

        verifier.initVerify(pair.getPublic());
        verifier.update(concat(message, new byte[] {1}));
        require(!verifier.verify(sig), algorithm + ": the provider accepts a signature of other data");

        // The JDK's software implementation over the exported public key.
        String keyAlgorithm = pair.getPublic().getAlgorithm();
        PublicKey soft = KeyFactory.getInstance(keyAlgorithm)
                .generatePublic(new X509EncodedKeySpec(pair.getPublic().getEncoded()));
        Signature software = null;
        for (Provider candidate : Security.getProviders()) {
            if (candidate != provider && candidate.getService("Signature", algorithm) != null) {
                software = Signature.getInstance(algorithm, candidate);
                break;
            }
        }
        require(software != null, "no software provider for " + algorithm);
        if (spec != null) {
            software.setParameter(spec);
        }
        software.initVerify(soft);
        software.update(message);
        require(software.verify(sig), algorithm + ": " + software.getProvider().getName() + " rejects the signature");
        return sig;
    }

    private static byte[] concat(byte[] a, byte[] b) {
        a = a == null ? new byte[0] : a;
        b = b == null ? new byte[0] : b;
        byte[] out = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }
}
