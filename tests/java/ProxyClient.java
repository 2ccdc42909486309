// Java 17's HttpClient through the proxy, as a legacy app is told to use it: the proxy from
// -Dhttps.proxyHost/-Dhttps.proxyPort (ProxySelector.getDefault()), the CA from a truststore
// (-Djavax.net.ssl.trustStore). Run as a single source file: java ProxyClient.java URL BODY
import java.net.ProxySelector;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class ProxyClient {
    public static void main(String[] args) throws Exception {
        HttpClient client = HttpClient.newBuilder().proxy(ProxySelector.getDefault()).build();
        for (int i = 0; i < 2; i++) { // two requests: the second reuses the tunnel
            HttpRequest request = HttpRequest.newBuilder(URI.create(args[0] + "/" + i))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(args[1]))
                .build();
            HttpResponse<String> response = client.send(request, HttpResponse.BodyHandlers.ofString());
            System.out.println(response.statusCode() + " " + response.version() + " " + response.body());
        }
    }
}
