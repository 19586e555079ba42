"""Identity: who a caller is and which tenant and roles they hold.

MODE "oidc" (gateway.settings GATEHOUSE_AUTH): Keycloak. API callers send bearer access tokens
(tokens.py validates them, authentication.py maps them to a user and membership, sync.py keeps the
membership in step with Keycloak on every request); the portal logs in with OpenID Connect
authorization code + PKCE and honours back-channel logout (views.py); tenant admins provision users
through the Keycloak Admin API (provisioning.py, api.py).

MODE "dev": the built-in password login and API tokens, for the embedded default and the test suite
only (devlogin.py); provisioning then writes the local tables only.
"""
