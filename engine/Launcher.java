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

    /** H2 commits in the background; a short delay narrows what a SIGKILL can lose. */
    static final int AUTO_COMMIT_DELAY_MS = 100;

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
        if (data != null) {
            File dir = new File(data);
            if (!dir.isDirectory() && !dir.mkdirs()) {
                System.err.println("mopq engine: cannot create data folder " + dir.getAbsolutePath());
                System.exit(2);
            }
            MVStore store = new MVStore.Builder()
                    .fileName(new File(dir, "mopq.mv.db").getPath())
                    .open();
            store.setAutoCommitDelay(AUTO_COMMIT_DELAY_MS);
            backend = new IndexFirst.H2(store);
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
                + (data != null ? "H2 storage in " + new File(data).getAbsolutePath() : "memory storage")
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
