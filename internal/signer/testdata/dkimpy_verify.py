# Verifies every DKIM-Signature of a message with dkimpy (Debian python3-dkim), an
# implementation independent of go-msgauth. Usage: dkimpy_verify.py MESSAGE RECORDS
# where RECORDS is a JSON object {"sel._domainkey.example.com.": "v=DKIM1; ..."} that
# stands in for DNS. Prints one line per signature, "ok" or "fail", topmost first; the
# reason of a failure goes to stderr.
import json
import sys

import dkim

msg = open(sys.argv[1], "rb").read()
records = json.load(open(sys.argv[2]))


def dnsfunc(name, timeout=5):
    rec = records.get(name.decode().lower())
    return rec.encode() if rec is not None else None


n = sum(1 for line in msg.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        if line.lower().startswith(b"dkim-signature:"))
d = dkim.DKIM(msg)
for i in range(n):
    try:
        ok = d.verify(idx=i, dnsfunc=dnsfunc)
    except dkim.DKIMException as e:
        print("signature %d: %s" % (i, e), file=sys.stderr)
        ok = False
    print("ok" if ok else "fail")
