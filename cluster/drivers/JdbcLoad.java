import java.sql.*;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;

/** pgjdbc through causeway while servers die (see cluster/drivers.sh):
 * results match their statements, errors carry a SQLSTATE, no connection is
 * closed.   java -cp .:postgresql.jar JdbcLoad PORT SECONDS */
public class JdbcLoad {
    static String URL;
    static final Map<String, AtomicInteger> errs = new ConcurrentHashMap<>();
    static final AtomicInteger ok = new AtomicInteger(), wrong = new AtomicInteger(), closed = new AtomicInteger();
    static void bump(String k) { errs.computeIfAbsent(k, x -> new AtomicInteger()).incrementAndGet(); }

    static Connection connect(long stop) throws InterruptedException {
        while (System.currentTimeMillis() < stop) {
            try { return DriverManager.getConnection(URL); } catch (SQLException e) { Thread.sleep(200); }
        }
        return null;
    }

    public static void main(String[] args) throws Exception {
        // A third argument adds connection properties: "&autosave=always".
        URL = "jdbc:postgresql://127.0.0.1:" + args[0] + "/app?user=app&password=app"
            + (args.length > 2 ? args[2] : "");
        long stop = System.currentTimeMillis() + Long.parseLong(args[1]) * 1000;
        List<Thread> threads = new ArrayList<>();
        for (int t = 0; t < 6; t++) {
            final int n = t;
            Thread th = new Thread(() -> {
                Random rnd = new Random();
                try {
                    Connection c = connect(stop);
                    while (c != null && System.currentTimeMillis() < stop) {
                        int k = rnd.nextInt(1_000_000) + 1;
                        double r = rnd.nextDouble();
                        try {
                            int v;
                            if (r < 0.4) {
                                try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 0")) {
                                    ps.setInt(1, k);
                                    try (ResultSet rs = ps.executeQuery()) { rs.next(); v = rs.getInt(1); }
                                }
                            } else if (r < 0.55) {
                                c.setAutoCommit(false);
                                try (PreparedStatement ps = c.prepareStatement("INSERT INTO pipe_chaos (who, v) VALUES (?, ?)")) {
                                    for (int i = 0; i < 3; i++) { ps.setInt(1, n); ps.setInt(2, k); ps.addBatch(); }
                                    ps.executeBatch();
                                }
                                try (PreparedStatement ps = c.prepareStatement("SELECT v FROM pipe_chaos WHERE who = ? AND v = ? LIMIT 1")) {
                                    ps.setInt(1, n); ps.setInt(2, k);
                                    try (ResultSet rs = ps.executeQuery()) { rs.next(); v = rs.getInt(1); }
                                }
                                c.commit();
                                c.setAutoCommit(true);
                            } else if (r < 0.7) {
                                c.setAutoCommit(false);
                                c.setReadOnly(true);
                                try (PreparedStatement ps = c.prepareStatement("SELECT ?::int + 0")) {
                                    ps.setInt(1, k);
                                    try (ResultSet rs = ps.executeQuery()) { rs.next(); v = rs.getInt(1); }
                                }
                                c.commit();
                                c.setReadOnly(false);
                                c.setAutoCommit(true);
                            } else {
                                try (PreparedStatement ps = c.prepareStatement("INSERT INTO pipe_chaos (who, v) VALUES (?, ?) RETURNING v")) {
                                    ps.setInt(1, n); ps.setInt(2, k);
                                    try (ResultSet rs = ps.executeQuery()) { rs.next(); v = rs.getInt(1); }
                                }
                            }
                            if (v != k) wrong.incrementAndGet(); else ok.incrementAndGet();
                        } catch (SQLException e) {
                            String state = e.getSQLState();
                            bump(state == null ? "null: " + e.getMessage() : state);
                            if (c.isClosed()) {
                                closed.incrementAndGet();
                                bump("closed: " + e.getMessage());
                                c = connect(stop);
                                continue;
                            }
                            try { if (!c.getAutoCommit()) c.rollback(); c.setReadOnly(false); c.setAutoCommit(true); } catch (SQLException e2) { bump("reset: " + e2.getSQLState() + " " + e2.getMessage()); }
                            Thread.sleep(20);
                        }
                    }
                    if (c != null) c.close();
                } catch (Exception e) { bump("thread: " + e); }
            });
            threads.add(th);
            th.start();
        }
        for (Thread th : threads) th.join();
        String name = args.length > 2 ? "pgjdbc (" + args[2].substring(1) + ")" : "pgjdbc";
        System.out.println(name + ": ok " + ok + " wrong " + wrong + " closed " + closed + " errors " + errs);
    }
}
