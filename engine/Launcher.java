import de.bwaldvogel.mongo.MongoBackend;
import de.bwaldvogel.mongo.MongoServer;
import de.bwaldvogel.mongo.MongoVersion;
import org.h2.mvstore.MVStore;

import java.io.File;
import java.io.InputStream;
import java.net.InetSocketAddress;
import java.util.List;
import java.util.concurrent.CountDownLatch;

/**
 * The embedded engine: mongo-java-server on a loopback port.
 *
 * Usage: Launcher [--host H] [--port N] [--data DIR] [--watch-stdin]
 *
 * The first line printed is the server's mongodb:// URI; callers wait for it.
 * With --data the H2 backend keeps data in DIR/mopq.mv.db, otherwise memory.
 * With H2, a write is answered only once it is in that file (see Durable.java),
 * unless the environment sets MOPQ_ENGINE_ACK_BEFORE_COMMIT=1: then writes are
 * answered at once and reach the file with the next background commit, as
 * before issue 10 (bench/engine_commit.py measures both; not for real use).
 * MOPQ_ENGINE_PLAIN_INDEXES=1 keeps the engine's own empty non-unique indexes, so
 * sorted queries scan as in mongo-java-server alone (OrderedIndex.java; for tests
 * that compare the two).
 * With --watch-stdin the engine stops when its standard input closes, so a
 * parent that dies (even by SIGKILL) never leaves a JVM behind.
 */
public final class Launcher {

    /**
     * mongo-java-server 1.47 reports wire version 8, and pymongo 4.20 refuses
     * servers below 9. The engine's behaviour does not change with the
     * reported version, so we report MongoDB 5.0 with wire version 13.
     */
    static final MongoVersion REPORTED_VERSION = new MongoVersion() {
        @Override
        public List<Integer> getVersionArray() {
            return List.of(5, 0, 0);
        }

        @Override
        public int getWireVersion() {
            return 13;
        }
    };

    /**
     * H2's background commit. Durable commits every write itself, so this one
     * rarely finds anything left to write; it stays because the same background
     * thread does H2's housekeeping (rewriting sparse chunks, moving chunks to
     * shrink the file), which a queue's insert-then-delete traffic needs: 40 s
     * of insert_one + delete_one keeping 1 document in 50 grew the file to
     * 175-196 MB, still growing, without it, and to under 80 MB with it.
     * The price: with the thread on, H2 hands every commit's write to two
     * writer threads of its own (and Durable waits for them), which made a
     * commit 1.6 to 2 times dearer in two of three paired runs on a busy
     * 2-core VM (0.36 and 0.71 ms against 0.23 and 0.35 ms) and not in the
     * third (0.55 against 0.64 ms). With MOPQ_ENGINE_ACK_BEFORE_COMMIT=1 it
     * is the only commit, as before.
     */
    static final int AUTO_COMMIT_DELAY_MS = 100;

    /**
     * H2's unsaved-memory budget (KB; its default is 1,024), which also sizes each
     * step of the housekeeping above: while the store is busy, one step rewrites
     * up to a quarter of it of live pages from sparse chunks, reading them back
     * (Java deserialization of the stored documents) under the store's lock, so
     * every commit waits for the step. JFR on the engine of `make bench`'s mopq
     * row showed commits blocked on that lock for 11 s in 55 s. With 256 the same
     * work is done in smaller steps (docs/BENCHMARKS.md, "H2 housekeeping in
     * smaller steps"). It changes nothing for durability: Durable commits every
     * write itself. (Withdrawn once, in c07a15e, after a chaos run lost counts
     * after an engine kill -9; that loss was the collector's, fixed in 16a0804.)
     */
    static final int UNSAVED_BUFFER_KB = 256;

    static final String ACK_BEFORE_COMMIT = "MOPQ_ENGINE_ACK_BEFORE_COMMIT";

    public static void main(String[] args) throws Exception {
        String host = "127.0.0.1";
        int port = 0;
        String data = null;
        boolean watchStdin = false;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--host" -> host = args[++i];
                case "--port" -> port = Integer.parseInt(args[++i]);
                case "--data" -> data = args[++i];
                case "--watch-stdin" -> watchStdin = true;
                default -> {
                    System.err.println("mopq engine: unknown argument " + args[i]
                            + " (expected --host, --port, --data, --watch-stdin)");
                    System.exit(2);
                }
            }
        }

        MongoBackend backend;
        boolean ackBeforeCommit = "1".equals(System.getenv(ACK_BEFORE_COMMIT));
        if (data != null) {
            File dir = new File(data);
            if (!dir.isDirectory() && !dir.mkdirs()) {
                System.err.println("mopq engine: cannot create data folder " + dir.getAbsolutePath());
                System.exit(2);
            }
            MVStore store = new MVStore.Builder()
                    .fileName(new File(dir, "mopq.mv.db").getPath())
                    .autoCommitBufferSize(UNSAVED_BUFFER_KB)
                    .open();
            store.setAutoCommitDelay(AUTO_COMMIT_DELAY_MS);
            backend = ackBeforeCommit ? new IndexFirst.H2(store) : new Durable(store);
        } else {
            backend = new IndexFirst.Memory();
        }
        backend.version(REPORTED_VERSION);

        MongoServer server = new MongoServer(backend);
        try {
            server.bind(host, port);
        } catch (RuntimeException e) {
            System.err.println("mopq engine: cannot listen on " + host + ":" + port + ": " + e.getMessage());
            backend.close();
            System.exit(3);
        }
        InetSocketAddress address = server.getLocalAddress();

        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            server.shutdownNow();
            backend.close();
            stopped.countDown();
        }, "mopq-engine-shutdown"));

        System.out.println("mongodb://" + address.getHostString() + ":" + address.getPort() + "/");
        System.out.println("mopq engine: mongo-java-server, "
                + (data != null ? "H2 storage in " + new File(data).getAbsolutePath()
                        + (ackBeforeCommit ? " (" + ACK_BEFORE_COMMIT + "=1: acknowledged writes can be lost)" : "")
                        : "memory storage")
                + (OrderedIndex.ENABLED ? "" : " (" + OrderedIndex.PLAIN + "=1: non-unique indexes are not kept)")
                + "; stop with Ctrl-C");
        System.out.flush();

        if (watchStdin) {
            Thread watcher = new Thread(() -> {
                try {
                    InputStream in = System.in;
                    while (in.read() != -1) {
                        // Input is ignored; only its end matters.
                    }
                } catch (Exception ignored) {
                    // A broken pipe means the parent is gone, same as EOF.
                }
                System.exit(0);
            }, "mopq-engine-stdin-watch");
            watcher.setDaemon(true);
            watcher.start();
        }
        stopped.await();
    }
}
