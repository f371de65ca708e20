/*
 * What the module remembers of its application so that it can reopen it in an
 * agent that restarted (docs/agent-protocol.md, "Agent restart"): the open
 * sessions (handle, slot, flags) and the login (user type and PIN). The PIN is
 * kept in one page of memory that is locked (mlock: never swapped), left out
 * of core dumps (MADV_DONTDUMP) and wiped in a forked child (MADV_WIPEONFORK),
 * and is wiped when the application logs out or finalizes. The module keeps no
 * other secret.
 */
#ifndef STRONGROOM_APP_H
#define STRONGROOM_APP_H

#include <p11-kit/pkcs11.h>

#include "mp.h"

/* Everything forgotten (C_Initialize in a new process, C_Finalize). */
void app_reset(void);

/* A successful C_OpenSession / C_CloseSession / C_CloseAllSessions. Closing
 * the last session ends the login, as the agent does (PKCS#11 §5.6). */
void app_session_opened(CK_SESSION_HANDLE handle, CK_SLOT_ID slot, CK_FLAGS flags);
void app_session_closed(CK_SESSION_HANDLE handle);
void app_sessions_closed(CK_SLOT_ID slot);

/* A successful C_Login (CKU_USER / CKU_SO) and C_Logout; C_SetPIN while logged in. */
void app_logged_in(CK_USER_TYPE type, const unsigned char *pin, CK_ULONG len);
void app_logged_out(void);
void app_pin_changed(const unsigned char *new_pin, CK_ULONG len);

/* Is there anything to reopen? */
int app_has_state(void);

/* Encode X_Resume's two arguments: [[session, slot, flags], ...] and nil or [user_type, pin]. */
void app_encode_resume(mp_enc *e);

#endif
