/**
 * python3-libnbd scripts shared by the compaction tests: a writer that keeps a model of
 * every byte it wrote (and takes snapshots between rounds), and a verifier of the model.
 */

export const HTTP = `
import nbd, json, socket, http.client, random
class U(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(SOCK)
def post(path):
    c = U("localhost"); c.request("POST", path); r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")
`;

/** Writes in rounds with a snapshot between rounds, keeping the model; dumps it to MODEL. */
export const WRITER = `${HTTP}
rnd = random.Random(SEED)
model = bytearray(open(BASE, "rb").read())
h = nbd.NBD(); h.connect_uri(URI)
def check_some():
    for _ in range(20):
        off = rnd.randrange(0, SIZE - 70000); n = rnd.randrange(1, 70000)
        assert h.pread(n, off) == bytes(model[off:off + n]), (off, n)
statuses = []
for r in range(ROUNDS + 1):
    for _ in range(60):
        off = rnd.randrange(0, SIZE - 70000); n = rnd.randrange(1, 70000)
        kind = rnd.random()
        if kind < 0.1:
            h.zero(n, off, nbd.CMD_FLAG_FUA if rnd.random() < 0.5 else 0); model[off:off + n] = bytes(n)
        else:
            data = rnd.randbytes(n)
            h.pwrite(data, off, nbd.CMD_FLAG_FUA if rnd.random() < 0.5 else 0); model[off:off + n] = data
        if rnd.random() < 0.2: h.flush()
    h.flush()
    check_some()
    if r < ROUNDS:
        statuses.append(post("/exports/vm1/snapshot")[0])
refused = post("/exports/vm1/compact")
check_some()
h.shutdown()
open(MODEL, "wb").write(model)
print(json.dumps({"snapshots": statuses, "refused": refused}))
`;

/** Reads the whole disk and compares it with MODEL; then writes a little more and checks that too. */
export const VERIFY = `
import nbd, json
model = open(MODEL, "rb").read()
h = nbd.NBD(); h.connect_uri(URI)
assert h.get_size() == len(model), (h.get_size(), len(model))
bad = [off for off in range(0, len(model), 1 << 20) if h.pread(1 << 20, off) != model[off:off + (1 << 20)]]
print(json.dumps({"bad": bad}))
`;

