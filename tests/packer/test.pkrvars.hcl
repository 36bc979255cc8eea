# Values for validating the template offline; nothing here is used by a real bake.
app_version = "1.4.2+local.1"
fingerprint = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
git_sha     = "0123456789abcdef0123456789abcdef01234567"
built_at    = "2026-11-22T02:30:00Z"
builder     = "tests@localhost"
wheelhouse  = "/tmp/wheelhouse"
